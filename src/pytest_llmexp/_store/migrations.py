"""The schema of message_log.db, as append-only ``sqlite_utils`` migrations.

Never edit a migration once released: add a new ``mNNN_verb_noun`` function instead.
Migrations import no package code, so an old migration keeps meaning what it meant.
"""

from __future__ import annotations

from sqlite_utils import Database, Migrations

__all__ = ["MIGRATION_SET", "migrations"]

MIGRATION_SET = "pytest_llmexp"  # the same as schema.MIGRATION_SET (a test pins both)
migrations = Migrations(MIGRATION_SET)


_M001 = """
        CREATE TABLE sessions (
            id TEXT PRIMARY KEY,
            kind TEXT NOT NULL,
            started_at TEXT NOT NULL,
            finished_at TEXT,
            status TEXT NOT NULL,
            exitstatus INTEGER,
            argv TEXT,
            versions TEXT,
            git_sha TEXT,
            endpoint TEXT,
            rootdir TEXT
        );
        CREATE TABLE experiments (
            id INTEGER PRIMARY KEY,
            session_id TEXT NOT NULL REFERENCES sessions(id),
            name TEXT NOT NULL,
            num_executions INTEGER NOT NULL,
            status TEXT NOT NULL,
            gate_passed INTEGER,
            summary TEXT,
            UNIQUE (session_id, name)
        );
        CREATE TABLE experiment_runs (
            id TEXT PRIMARY KEY,
            experiment_id INTEGER NOT NULL REFERENCES experiments(id),
            execution_index INTEGER NOT NULL,
            attempt INTEGER NOT NULL DEFAULT 1,
            worker TEXT,
            nodeid TEXT,
            status TEXT NOT NULL,
            error_type TEXT,
            error_message TEXT,
            started_at TEXT NOT NULL,
            duration_s REAL,
            run_data TEXT NOT NULL
        );
        CREATE INDEX experiment_runs_experiment ON experiment_runs (experiment_id);
        CREATE TABLE prompts (
            id INTEGER PRIMARY KEY,
            hash TEXT NOT NULL,
            function_name TEXT NOT NULL,
            module TEXT NOT NULL,
            role TEXT NOT NULL,
            template TEXT NOT NULL,
            previous_version_id INTEGER REFERENCES prompts(id),
            created_at TEXT NOT NULL,
            UNIQUE (module, function_name, hash)
        );
        CREATE TABLE bots (
            id INTEGER PRIMARY KEY,
            hash TEXT NOT NULL UNIQUE,
            class_name TEXT NOT NULL,
            model_name TEXT NOT NULL,
            temperature REAL,
            system_prompt TEXT,
            system_prompt_hash TEXT,
            response_schema TEXT,
            params TEXT NOT NULL,
            created_at TEXT NOT NULL
        );
        CREATE TABLE message_log (
            id TEXT PRIMARY KEY,
            run_id TEXT REFERENCES experiment_runs(id),
            bot_id INTEGER NOT NULL REFERENCES bots(id),
            timestamp TEXT NOT NULL,
            model_name TEXT NOT NULL,
            response_model TEXT,
            temperature REAL,
            message_log TEXT NOT NULL,
            prompt_tokens INTEGER,
            completion_tokens INTEGER,
            latency_ms REAL,
            retries INTEGER NOT NULL DEFAULT 0,
            finish_reason TEXT,
            error TEXT
        );
        CREATE INDEX message_log_run ON message_log (run_id);
        CREATE TABLE metrics (
            run_id TEXT NOT NULL REFERENCES experiment_runs(id),
            name TEXT NOT NULL,
            value REAL NOT NULL,
            kind TEXT NOT NULL,
            PRIMARY KEY (run_id, name)
        );
        CREATE TABLE run_prompts (
            run_id TEXT NOT NULL REFERENCES experiment_runs(id),
            prompt_id INTEGER NOT NULL REFERENCES prompts(id),
            PRIMARY KEY (run_id, prompt_id)
        );
        CREATE TABLE run_bots (
            run_id TEXT NOT NULL REFERENCES experiment_runs(id),
            bot_id INTEGER NOT NULL REFERENCES bots(id),
            PRIMARY KEY (run_id, bot_id)
        );
"""


@migrations()
def m001_create_tables(db: Database) -> None:
    # One statement at a time: executescript() would commit the migration's transaction.
    for statement in _M001.split(";"):
        if statement.strip():
            db.execute(statement)


@migrations()
def m002_add_fault_columns(db: Database) -> None:
    # Per run: retries taken over its calls. Per call: the typed error and whether the stored
    # text was cut at the size cap. Per session: what went wrong (errors, budget, spend, spool).
    db.execute("ALTER TABLE experiment_runs ADD COLUMN retries INTEGER NOT NULL DEFAULT 0")
    db.execute("ALTER TABLE message_log ADD COLUMN error_type TEXT")
    db.execute("ALTER TABLE message_log ADD COLUMN truncated INTEGER NOT NULL DEFAULT 0")
    db.execute("ALTER TABLE sessions ADD COLUMN health TEXT")


@migrations()
def m003_add_verdict_tables(db: Database) -> None:
    # Per run: the parametrize case it belongs to (executions of one case are repeats). Per
    # experiment: its comparison with a baseline session. Per gate: what was checked and found.
    db.execute("ALTER TABLE experiment_runs ADD COLUMN case_id TEXT")
    db.execute("ALTER TABLE experiments ADD COLUMN comparison TEXT")
    db.execute(
        """
        CREATE TABLE gate_results (
            id INTEGER PRIMARY KEY,
            experiment_id INTEGER NOT NULL REFERENCES experiments(id),
            gate TEXT NOT NULL,
            source TEXT NOT NULL,
            metric TEXT NOT NULL,
            statistic TEXT NOT NULL,
            op TEXT NOT NULL,
            threshold REAL NOT NULL,
            observed REAL,
            verdict TEXT NOT NULL,
            detail TEXT
        )
        """
    )
    db.execute("CREATE INDEX gate_results_experiment ON gate_results (experiment_id)")


@migrations()
def m004_add_cache_tables(db: Database) -> None:
    # Per call: its cache key, what the key was made of (for explaining a replay miss), and
    # the recorded call it was served from. Per run: the run it re-scored. Per session: the
    # cache mode and the session it replayed. llm_cache: the recorded call for each key.
    db.execute("ALTER TABLE message_log ADD COLUMN cache_key TEXT")
    db.execute("ALTER TABLE message_log ADD COLUMN request TEXT")
    db.execute("ALTER TABLE message_log ADD COLUMN replayed_from TEXT")
    db.execute("CREATE INDEX message_log_cache_key ON message_log (cache_key)")
    db.execute("ALTER TABLE experiment_runs ADD COLUMN replayed_from TEXT")
    db.execute("ALTER TABLE sessions ADD COLUMN cache_mode TEXT")
    db.execute("ALTER TABLE sessions ADD COLUMN replay_of TEXT")
    db.execute("ALTER TABLE sessions ADD COLUMN cache_served INTEGER")
    db.execute(
        """
        CREATE TABLE llm_cache (
            key TEXT PRIMARY KEY,
            message_log_id TEXT NOT NULL REFERENCES message_log(id),
            recorded_at TEXT NOT NULL
        )
        """
    )


_M005_TABLES = {
    "metrics": """
        run_id TEXT NOT NULL REFERENCES experiment_runs(id),
        name TEXT NOT NULL,
        value REAL NOT NULL,
        kind TEXT NOT NULL,
        PRIMARY KEY (run_id, name)""",
    "run_prompts": """
        run_id TEXT NOT NULL REFERENCES experiment_runs(id),
        prompt_id INTEGER NOT NULL REFERENCES prompts(id),
        PRIMARY KEY (run_id, prompt_id)""",
    "run_bots": """
        run_id TEXT NOT NULL REFERENCES experiment_runs(id),
        bot_id INTEGER NOT NULL REFERENCES bots(id),
        PRIMARY KEY (run_id, bot_id)""",
}


@migrations()
def m005_cluster_run_tables(db: Database) -> None:
    # The per-run tables become WITHOUT ROWID tables clustered on their primary key: the
    # same columns, but no second copy of (run_id, name) in a separate index, which was a
    # third of a run's bytes with ten metrics.
    for table, columns in _M005_TABLES.items():
        db.execute(f"CREATE TABLE {table}_new ({columns}\n) WITHOUT ROWID")
        db.execute(f"INSERT INTO {table}_new SELECT * FROM {table}")
        db.execute(f"DROP TABLE {table}")
        db.execute(f"ALTER TABLE {table}_new RENAME TO {table}")


@migrations()
def m006_normalize_run_data(db: Database) -> None:
    # A run's prompts, bots, calls and metric values are rows of run_prompts, run_bots,
    # message_log and metrics; run_data repeated them, a fifth of a run's bytes. It keeps
    # what has no table (metadata, gates, metric options). The order a run recorded its
    # metrics in, which only run_data held, becomes a column.
    db.execute("ALTER TABLE metrics ADD COLUMN position INTEGER NOT NULL DEFAULT 0")
    db.execute(
        """
        UPDATE metrics SET position = coalesce((
            SELECT j.position FROM (
                SELECT e.key, row_number() OVER (ORDER BY e.id) - 1 AS position
                FROM experiment_runs r, json_each(r.run_data, '$.metrics') e
                WHERE r.id = metrics.run_id
            ) j WHERE j.key = metrics.name
        ), 0)
        """
    )
    db.execute(
        "UPDATE experiment_runs SET run_data = "
        "json_remove(run_data, '$.prompts', '$.bots', '$.message_log_ids', '$.metrics')"
    )


@migrations()
def m007_add_seed_and_partial(db: Database) -> None:
    # The seed a call sent (the embedded model gets a fresh one per call, so that sessions
    # draw new samples), and whether an experiment ran fewer executions of a case than it
    # declares (an IDE running one execution, -k, -x, a lower --llm-num-executions).
    db.execute("ALTER TABLE message_log ADD COLUMN seed INTEGER")
    db.execute("ALTER TABLE experiments ADD COLUMN partial INTEGER NOT NULL DEFAULT 0")


@migrations()
def m008_add_captured_calls(db: Database) -> None:
    # Calls the code under test makes through its own openai client are recorded too. Per
    # bot: what made the calls, 'bot' (SimpleBot, StructuredBot) or 'client' (the user's own
    # OpenAI or AsyncOpenAI client, captured). Per call: which API it used, chat.completions
    # or responses, and whether the reply was streamed.
    db.execute("ALTER TABLE bots ADD COLUMN kind TEXT NOT NULL DEFAULT 'bot'")
    db.execute("ALTER TABLE message_log ADD COLUMN api TEXT")
    db.execute("ALTER TABLE message_log ADD COLUMN stream INTEGER NOT NULL DEFAULT 0")


@migrations()
def m009_add_variants_and_cost(db: Database) -> None:
    # An experiment can run several variants (models, settings, prompts) side by side. Per
    # run: its variant, 'model=gpt-4o' (NULL without variants), and its cost in US dollars
    # from the session's prices: the calls it measured, and its judges' calls apart (NULL:
    # no price known). Per call: whether a judge made it (a bot called inside a @metric).
    # Per gate result: the variant it judged.
    db.execute("ALTER TABLE experiment_runs ADD COLUMN variant TEXT")
    db.execute("ALTER TABLE experiment_runs ADD COLUMN cost REAL")
    db.execute("ALTER TABLE experiment_runs ADD COLUMN judge_cost REAL")
    db.execute("ALTER TABLE message_log ADD COLUMN judge INTEGER NOT NULL DEFAULT 0")
    db.execute("ALTER TABLE gate_results ADD COLUMN variant TEXT")
