-- The ledger schema of alloop at commit 2317036 (schema version 1, before the schema table),
-- as SQLAlchemy created it in SQLite, flows/lock.py's flow_leases included.
CREATE TABLE campaigns (
	id INTEGER NOT NULL,
	name VARCHAR(200) NOT NULL,
	config JSON NOT NULL,
	config_hash VARCHAR(32) NOT NULL,
	seed INTEGER NOT NULL,
	versions JSON NOT NULL,
	created_at DATETIME NOT NULL,
	PRIMARY KEY (id),
	UNIQUE (name)
);
CREATE TABLE runs (
	id INTEGER NOT NULL,
	campaign_id INTEGER NOT NULL,
	seed INTEGER NOT NULL,
	config_hash VARCHAR(32) NOT NULL,
	versions JSON NOT NULL,
	host VARCHAR(255) NOT NULL,
	pid INTEGER NOT NULL,
	started_at DATETIME NOT NULL,
	PRIMARY KEY (id),
	FOREIGN KEY(campaign_id) REFERENCES campaigns (id)
);
CREATE TABLE candidates (
	campaign_id INTEGER NOT NULL,
	id VARCHAR(64) NOT NULL,
	params JSON NOT NULL,
	run_id INTEGER NOT NULL,
	created_at DATETIME NOT NULL,
	PRIMARY KEY (campaign_id, id),
	FOREIGN KEY(campaign_id) REFERENCES campaigns (id),
	FOREIGN KEY(run_id) REFERENCES runs (id)
);
CREATE TABLE evaluations (
	id INTEGER NOT NULL,
	campaign_id INTEGER NOT NULL,
	candidate_id VARCHAR(64) NOT NULL,
	cycle INTEGER NOT NULL,
	status VARCHAR(16) NOT NULL,
	external_id VARCHAR(255),
	cost FLOAT,
	error TEXT,
	retryable BOOLEAN,
	run_id INTEGER NOT NULL,
	proposed_at DATETIME NOT NULL,
	submitted_at DATETIME,
	finished_at DATETIME,
	metadata JSON,
	PRIMARY KEY (id),
	CONSTRAINT one_evaluation_per_candidate UNIQUE (campaign_id, candidate_id),
	FOREIGN KEY(campaign_id) REFERENCES campaigns (id),
	FOREIGN KEY(run_id) REFERENCES runs (id)
);
CREATE TABLE cycles (
	campaign_id INTEGER NOT NULL,
	cycle INTEGER NOT NULL,
	status VARCHAR(16) NOT NULL,
	acquisition VARCHAR(50),
	surrogate JSON,
	chosen JSON,
	stop_reason TEXT,
	run_id INTEGER NOT NULL,
	started_at DATETIME NOT NULL,
	finished_at DATETIME,
	PRIMARY KEY (campaign_id, cycle),
	FOREIGN KEY(campaign_id) REFERENCES campaigns (id),
	FOREIGN KEY(run_id) REFERENCES runs (id)
);
CREATE TABLE results (
	evaluation_id INTEGER NOT NULL,
	property VARCHAR(100) NOT NULL,
	value FLOAT NOT NULL,
	uncertainty FLOAT,
	unit VARCHAR(50) NOT NULL,
	run_id INTEGER NOT NULL,
	created_at DATETIME NOT NULL,
	PRIMARY KEY (evaluation_id, property),
	FOREIGN KEY(evaluation_id) REFERENCES evaluations (id),
	FOREIGN KEY(run_id) REFERENCES runs (id)
);
CREATE TABLE flow_leases (
	campaign VARCHAR(200) NOT NULL,
	holder VARCHAR(64) NOT NULL,
	label VARCHAR(200) NOT NULL,
	host VARCHAR(255) NOT NULL,
	pid INTEGER NOT NULL,
	acquired_at FLOAT NOT NULL,
	expires_at FLOAT NOT NULL,
	PRIMARY KEY (campaign)
);
