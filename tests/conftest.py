"""Shared fixtures. Each plugin module owns one kind of real part (see tests/plugins/)."""

pytest_plugins = [
    "tests.plugins.common",
    "tests.plugins.postgres",
    "tests.plugins.upstream",
    "tests.plugins.model",
    "tests.plugins.starter_model",
    "tests.plugins.scheduling",
    "tests.plugins.gateway",
    "tests.plugins.browser",
    "tests.plugins.evaluation",
    "tests.plugins.smtp",
    "tests.plugins.vllm",
    "tests.plugins.accounts",
    "tests.plugins.oidc",
    "tests.plugins.openai_teacher",
]
