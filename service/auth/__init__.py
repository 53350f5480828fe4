"""Identity and authorization: principals, the policy, tokens, TLS, the audit log."""
