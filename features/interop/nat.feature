@interop @nat
Feature: Clients behind NATs (beyond the ETS)
  Residential gateways forget idle UDP mappings: the server then sees the client come back
  from a new port. The registration must survive, and the server must reach the client at
  its new address after its next message (Core TS 1.1 §6.2.2: the Update carries the
  client's current address).

  Background:
    Given the LwM2M server is running
    And a client "nat-dev" with profile "ets-1.1"
    And the client is behind a NAT that forgets mappings after 30s
    And the client is registered

  @core-6.2.2
  Scenario: NAT rebinding: the server follows the client to its new address
    # Lifetime 300 s: the next Update (290 s on) comes after the failing read below has
    # given up (62-93 s of retransmissions, by the seed), so the read after it finds the
    # new mapping fresh whatever the seed.
    When the server writes "300" to /1/0/1
    Then the client sends an Update within 5s
    When 60s pass
    # the mapping is gone: the request is dropped at the NAT and times out
    And the server reads /3/0/0 in plain text
    Then the operation fails with "exchange with"
    # the client's next Update comes from a new port
    And the client sends an Update within 200s
    And the server reaches the client at its new address
    When the server reads /3/0/0 in plain text
    Then the response code is 2.05
    And the value of /3/0/0 is "Open Mobile Alliance"
    And the client is registered

  @core-6.2.2
  Scenario: A client that keeps talking keeps its mapping
    When the server writes "25" to /1/0/1
    Then the client sends an Update within 5s
    When 100s pass
    And the server reads /3/0/0 in plain text
    Then the response code is 2.05
