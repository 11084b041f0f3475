"""The sweep stages, in data-flow order: plan (dedupe), claim, submit, supervise, failures, observe."""
