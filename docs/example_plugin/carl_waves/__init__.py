"""carl-waves: the minimal carl plugin of docs/plugins.md."""
