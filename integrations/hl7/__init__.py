"""HL7 v2: the MLLP listener, header parsing, ACK/NAK building."""
