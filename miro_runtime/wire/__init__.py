"""The control socket's wire format and a small client, standard library only: what clients in any
language mirror. Imports no other layer."""
