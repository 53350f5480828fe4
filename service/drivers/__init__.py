"""Storage: SQLAlchemy tables and typed drivers; all SQL lives here."""
