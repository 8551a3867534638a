"""Device enrollment: one-time tokens, the fleet CA, MQTT credentials, pinned roots, revocation.

| module         | what                                                             |
|----------------|------------------------------------------------------------------|
| service.py     | tokens, `enroll()`, `revoke_device()`, broker credential export   |
| renewal.py     | certificate renewal: CSR + proof by the current key; CRL of superseded certs |
| ca.py          | fleet CA (ECDSA P-256): device certificates from CSR or key; CRL |
| credentials.py | MQTT passwords, stored in Mosquitto's `$7$` PBKDF2 form           |
| ratelimit.py   | token buckets for the public enrollment route                    |
| trust.py       | the `TrustRoots` port: image repository root + director root     |
"""
