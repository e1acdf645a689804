"""DICOM: the C-ECHO/C-STORE SCP (pynetdicom)."""
