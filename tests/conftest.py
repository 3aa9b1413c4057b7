pytest_plugins = ["tests.db_fixtures", "tests.s3_fixtures", "tests.s3_servers", "tests.crash_worker"]
