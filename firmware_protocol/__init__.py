"""Wire protocol between the host and a memristor test board.

NOTE: the codec, SPEC.md and the board emulator are not written yet; only the simulator backend exists.
"""
