"""The coordinator's write paths (HackSoft-style services), one module per concept.

``providers`` registration, presence and reputation counters; ``matching`` eligibility and
ranking (reads only); ``jobs`` submission, cancellation and disputes; ``dispatch``
assignment, provider messages and failover; ``settlement`` receipts, charges and the
chain's answers; ``deposits`` the deposit books; ``outbox`` the coordinator's
transactions; ``sweep`` the periodic safety net.
"""
