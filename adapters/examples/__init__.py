"""Example tasks for the adapter pipeline, each a spec with its data: `json_extract` (a
message to a JSON record), `sql` (a question to an SQLite SELECT) and `french` (answers in
French). The datasets are made by `make_datasets` and checked in."""
