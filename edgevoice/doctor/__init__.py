"""`edgevoice check`: find what is wrong with a setup, one check per line.

Modules, one job each: `verdicts` (the result type, text and JSON, the exit code),
`service` (what the installed unit gives the daemon), `config_checks`, `key_checks`,
`audio_checks` (with `alsa_busy`: who holds a capture device), `network_checks`, and
`runner` (the order, and what is skipped when).
"""
