"""livepulse stream processor: the pure aggregation core (``streams.core``) and its runtime."""
