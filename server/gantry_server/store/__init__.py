"""Storage: SQLAlchemy models, repositories (the only code that writes SQL), migrations, Redis keys."""
