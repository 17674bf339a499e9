"""What the deploys did and what follows from it: the ledger, DORA figures, metrics, reports, notifications."""
