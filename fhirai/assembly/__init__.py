"""Study assembly: when is a study complete."""
