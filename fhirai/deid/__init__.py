"""De-identification: PS3.15 profile, keyed pseudonyms, the re-identification vault."""
