"""`tagifai serve`: the HTTP scoring server that follows the champion alias."""
