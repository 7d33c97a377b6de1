"""The tracker: which agents hold which layers, and who fetches a cold layer."""
