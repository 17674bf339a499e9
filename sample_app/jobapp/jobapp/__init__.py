"""jobapp: finds job postings, scores them against a profile, writes cover letters, queues email."""
