"""``python -m station.opcua hash-password NAME``: a line for the OPC UA users file."""
from station.opcua import main

raise SystemExit(main())
