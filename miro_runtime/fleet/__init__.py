"""The fleet: mirod boards learning together through Flower (flwr), each keeping its data. Only
``aggregate`` (numpy) is here so far; nothing imports flwr unless the fleet is on."""
