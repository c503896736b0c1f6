"""mirod: the process (process.py), its control server (server.py), one handler per RPC method
(handlers.py), the inbox, metrics export, configuration and systemd glue. A thin shell over session/."""
