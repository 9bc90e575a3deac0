"""Wire protocols: the Gearman binary + admin text codec (sans-IO) and the command table."""
