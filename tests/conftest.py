pytest_plugins = ["tests.fixtures", "tests.web.fixtures"]
