"""Ray-free tooling that starts real local services for development and tests.

``seaweed``    a SeaweedFS ``weed mini`` S3 server on loopback (``SeaweedS3``)
``postgres``   picking or starting a PostgreSQL and creating per-run databases
``tcp_proxy``  a loopback TCP proxy that tests pause to make a service "go away"
``ports``      free loopback ports
"""

from __future__ import annotations
