// What static analysis of an uploaded file found, picked out of its observations (the shape of a
// collector run's) for the page to show first: the file's hashes, type and size, the YARA rules it
// matched, and the malware it is a sample of ("sample-of" relations). Pure, so it is tested alone.
//
// The malware collector (services/collectors/builtin/malware.py) writes the file entity's properties
// as STIX does (hashes, size, name, mime_type) plus its summary in `x_static`: the type as described
// by content, the entropy, and the YARA matches ({rule, namespace, tags, meta, strings, scope}).
import { propertiesOf } from '../map/model.js';
import { stixType } from '../graph/model.js';

// The usual order of a file's hashes; others the analysis adds follow, as it gave them.
const HASH_ORDER = ['MD5', 'SHA-1', 'SHA-256', 'SHA-512', 'SHA3-256', 'SSDEEP', 'TLSH'];

function hashesOf(properties) {
  const hashes = properties.hashes && typeof properties.hashes === 'object' ? properties.hashes : {};
  const rank = (name) => {
    const i = HASH_ORDER.indexOf(name.toUpperCase());
    return i < 0 ? HASH_ORDER.length : i;
  };
  return Object.entries(hashes).filter(([, v]) => typeof v === 'string' && v)
    .sort(([a], [b]) => rank(a) - rank(b));
}

function isFileOf(observation, sha256) {
  const entity = observation.entity ?? {};
  if (entity.type !== 'file') return false;
  if (String(entity.value).toLowerCase() === sha256) return true;
  return hashesOf(propertiesOf(entity)).some(([, v]) => v.toLowerCase() === sha256);
}

// A YARA match as the analysis may write it: a rule's name, or an object naming it.
function ruleName(match) {
  if (typeof match === 'string') return match;
  if (match && typeof match === 'object') return String(match.rule ?? match.name ?? match.identifier ?? '');
  return '';
}

const isObject = (value) => value !== null && typeof value === 'object' && !Array.isArray(value);

// The matches under a `yara` key (or `yara_matches`), at the top or one level down (`x_static`).
function yaraOf(properties, depth = 0) {
  const rules = [];
  for (const [key, value] of Object.entries(properties)) {
    if (/^yara(_matches|_rules)?$/i.test(key)) {
      for (const match of Array.isArray(value) ? value : [value]) {
        const name = ruleName(match);
        if (name) rules.push(name);
      }
    } else if (depth === 0 && isObject(value)) {
      rules.push(...yaraOf(value, 1));
    }
  }
  return rules;
}

/**
 * {file, hashes: [[name, value]], type, description, entropy, size, name, yara: [rule], yaraError,
 * malware: [{id, name}]} for an upload whose SHA-256 is `sha256`; `file` is its observation (null
 * if the answer has none).
 */
export function fileAnalysis(sha256, observations) {
  sha256 = String(sha256 ?? '').toLowerCase();
  observations = observations ?? [];
  const files = observations.filter((o) => o.entity?.type === 'file');
  const file = files.find((o) => isFileOf(o, sha256)) ?? files[0] ?? null;
  const properties = file ? propertiesOf(file.entity) : {};
  const hashes = hashesOf(properties);
  if (sha256 && !hashes.some(([, v]) => v.toLowerCase() === sha256)) hashes.unshift(['SHA-256', sha256]);
  const summary = isObject(properties.x_static) ? properties.x_static : {};
  const type = typeof properties.mime_type === 'string' ? properties.mime_type : '';
  const description = typeof summary.type === 'string' ? summary.type : '';

  const entities = new Map();
  for (const o of observations) if (o.entity?.id) entities.set(o.entity.id, o.entity);
  const yara = new Set(yaraOf(properties));
  for (const o of observations) if (o !== file) for (const rule of yaraOf(propertiesOf(o.entity))) yara.add(rule);

  // The malware at the other end of a sample-of relation (written file -> malware, read either way).
  const malware = new Map();
  const fileId = file?.entity?.id ?? '';
  for (const o of observations) {
    for (const r of o.relations ?? []) {
      if (r.type !== 'sample-of') continue;
      const end = [r.target_id, r.source_id].find((id) => id && id !== fileId
        && (entities.get(id)?.type ?? stixType(id)) === 'malware');
      if (end && !malware.has(end)) malware.set(end, { id: end, name: entities.get(end)?.value ?? end });
    }
  }
  return { file, hashes, type, description, entropy: typeof summary.entropy === 'number' ? summary.entropy : null,
    size: properties.size ?? null, name: properties.name ?? '', yara: [...yara],
    yaraError: typeof summary.yara_error === 'string' ? summary.yara_error : '', malware: [...malware.values()] };
}
