"""Docker's network and IPAM plugin, the Engine API client and the network mirror."""
