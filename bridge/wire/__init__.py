"""The wire between the add-on and the backend: `protocol` (operations, schemas, array contracts), `codec`
(frames <-> header + arrays), `contract` (the one array-contract check), `client` (the DEALER side) and
`keys` (a client's CURVE keypair). protocol, codec and contract need numpy and msgpack; client and keys
also pyzmq."""
