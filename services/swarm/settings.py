from pydantic import BaseModel, Field

from bev.settings import BevSettings


class BudgetDefaults(BaseModel):
    """What an investigation may spend when its request leaves a field at 0."""

    max_tool_calls: int = Field(default=200, ge=1)
    max_tokens: int = Field(default=200_000, ge=1)
    max_wall_s: float = Field(default=900.0, gt=0)
    max_depth: int = Field(default=2, ge=1, le=5)


class SwarmConfig(BaseModel):
    budget: BudgetDefaults = BudgetDefaults()
    # Investigations each replica runs at once (DBOS queue worker concurrency); the queue is shared
    # by every replica through PostgreSQL.
    concurrency: int = Field(default=2, ge=1)
    # Investigations one team (its API keys' `team`) may have queued or running at once, over all
    # replicas; a start beyond it is refused (RESOURCE_EXHAUSTED). 0 = no limit. Callers without a
    # team (admin keys, other services) are not counted.
    max_active_per_team: int = Field(default=3, ge=0)
    queue_poll_s: float = Field(default=0.5, gt=0)
    # Replica liveness: each writes a heartbeat; a replica silent for orphan_after_s has its
    # unfinished investigations resumed by another (DBOS recovery of its executor).
    heartbeat_s: float = Field(default=1.0, gt=0)
    orphan_after_s: float = Field(default=6.0, gt=0)
    # Parallel tool calls within one step (collect fan-out).
    tool_parallelism: int = Field(default=6, ge=1)
    # Hybrid mode switches to a democratic vote when the leader's best hypothesis is below this
    # confidence, or when two hypotheses are within conflict_margin of each other.
    hybrid_min_confidence: float = Field(default=0.6, ge=0, le=1)
    hybrid_conflict_margin: float = Field(default=0.1, ge=0, le=1)
    # Autonomous mode stops after this many blackboard rounds that add no question and no evidence.
    quiescence_rounds: int = Field(default=2, ge=1)
    # Evidence items given to one agent's analysis (the most relevant first), and its hypotheses.
    analysis_documents: int = Field(default=12, ge=1)
    max_hypotheses: int = Field(default=2, ge=1)
    # The reasoning tier agents use ("fast" = the embedded SmolLM2; "balanced"/"powerful" = vLLM).
    tier: str = "fast"


class Settings(BevSettings):
    swarm: SwarmConfig = SwarmConfig()
