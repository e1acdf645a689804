"""FHIR R4: the /fhir/ facade and the upstream client."""
