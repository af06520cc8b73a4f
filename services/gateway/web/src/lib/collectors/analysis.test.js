// Picking a file analysis's findings out of its observations.
import { describe, expect, it } from 'vitest';
import { fileAnalysis } from './analysis.js';

const SHA256 = 'a'.repeat(64);
const FILE_ID = 'file--00000000-0000-5000-8000-00000000000f';
const MALWARE_ID = 'malware--00000000-0000-5000-8000-00000000000a';

function observation(id, entity, relations = []) {
  return { id, entity: { properties_json: '{}', ...entity }, relations, source: 'quarantine', collector: 'malware',
    tlp: 'clear', confidence: 80, observed_at: 0 };
}

// As the malware collector writes a file: STIX's properties, and its summary in x_static.
const FILE = observation('obs-file', { id: FILE_ID, type: 'file', value: SHA256, properties_json: JSON.stringify({
  name: 'invoice.exe', size: 4096, mime_type: 'application/vnd.microsoft.portable-executable',
  hashes: { TLSH: 'T1ABC', 'SHA-256': SHA256, MD5: 'b'.repeat(32), 'SHA-1': 'c'.repeat(40) },
  x_static: { type: 'Windows Executable', entropy: 7.2, strings: 40, indicators: 1,
    yara: [{ rule: 'HarborLoader_Strings', namespace: 'yara/harborloader.yar', meta: { malware: 'HarborLoader' },
      strings: ['$a'], scope: 'file' }, { rule: 'PE_Packed_UPX', namespace: 'yara/packers.yar', scope: 'file' }],
    yara_error: '' } }) },
[{ id: 'relationship--1', source_id: FILE_ID, target_id: MALWARE_ID, type: 'sample-of', confidence: 80 }]);
const MALWARE = observation('obs-malware', { id: MALWARE_ID, type: 'malware', value: 'HarborLoader' });
const URL_FOUND = observation('obs-url', { id: 'url--1', type: 'url', value: 'http://203.0.113.9/gate.php' },
  [{ id: 'relationship--2', source_id: FILE_ID, target_id: 'url--1', type: 'related-to' }]);

describe('fileAnalysis', () => {
  it('finds the file, its hashes in the usual order, its type, YARA matches and the malware it is a sample of', () => {
    const found = fileAnalysis(SHA256.toUpperCase(), [URL_FOUND, FILE, MALWARE]);
    expect(found.file).toBe(FILE);
    expect(found.hashes.map(([name]) => name)).toEqual(['MD5', 'SHA-1', 'SHA-256', 'TLSH']);
    expect(found.type).toBe('application/vnd.microsoft.portable-executable');
    expect(found.description).toBe('Windows Executable');
    expect(found.entropy).toBe(7.2);
    expect(found.yaraError).toBe('');
    expect(found.size).toBe(4096);
    expect(found.name).toBe('invoice.exe');
    expect(found.yara).toEqual(['HarborLoader_Strings', 'PE_Packed_UPX']);
    expect(found.malware).toEqual([{ id: MALWARE_ID, name: 'HarborLoader' }]);
  });

  it('reads matches written flat, as rule names or objects', () => {
    const flat = observation('obs-flat', { id: FILE_ID, type: 'file', value: SHA256,
      properties_json: JSON.stringify({ yara: ['One', { name: 'Two' }], yara_error: 'timed out' }) });
    expect(fileAnalysis(SHA256, [flat]).yara).toEqual(['One', 'Two']);
  });

  it('names malware by its id when the answer holds only the relation', () => {
    expect(fileAnalysis(SHA256, [FILE]).malware).toEqual([{ id: MALWARE_ID, name: MALWARE_ID }]);
  });

  it('still shows the SHA-256 when no file observation came back', () => {
    const found = fileAnalysis(SHA256, [URL_FOUND]);
    expect(found.file).toBeNull();
    expect(found.hashes).toEqual([['SHA-256', SHA256]]);
    expect(found.type).toBe('');
    expect(found.yara).toEqual([]);
    expect(found.malware).toEqual([]);
  });
});
