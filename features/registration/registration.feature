@registration
Feature: Registration interface (ETS int-101 to int-107)
  The client registers with the LwM2M Server, keeps its registration alive with Updates and
  de-registers (Core TS 1.1 §6.2). The device is the ETS configuration C.3 (profile
  "ets-1.1": lifetime 86400 s, binding U, NoSec).

  Background:
    Given the LwM2M server is running
    And a client "ets-dev" with profile "ets-1.1"

  @int-101
  Scenario: Initial registration
    When the client starts
    Then the client registers within 10s
    And the registration has lifetime 86400
    And the registration has LwM2M version 1.1
    And the registration has binding "U"
    And the registration lists /1/0, /3/0, /16/0
    And the registration does not list /0
    And the client knows it is registered within 1s

  @int-102
  Scenario: Registration update after the server shortens the lifetime
    Given the client is registered
    When the server writes "20" to /1/0/1
    Then the response code is 2.04
    And the client sends an Update within 5s
    And the last Update carried "lt=20"
    And the registration has lifetime 20
    # before the 20 s run out the client refreshes its registration with an empty Update
    And the client sends an Update within 20s
    And the last Update carried no parameters
    And the client is still registered after 30s

  @int-103
  Scenario: De-registration on Disable
    Given the subject supports "Disable"
    And the client is registered
    When the server executes /1/0/4
    Then the response code is 2.04
    And the client de-registers within 5s
    And the client is not registered

  @core-6.2.3
  Scenario: De-registration by the client
    Given the client is registered
    When the client de-registers
    Then the client de-registers within 5s
    And the client is not registered

  @int-104
  Scenario: Registration Update Trigger
    Given the client is registered
    When the server writes "20" to /1/0/1
    Then the client sends an Update within 5s
    When 5s pass
    And the server executes /1/0/8
    Then the response code is 2.04
    And the client sends an Update within 5s
    And the last Update carried no parameters
    # the server refreshed the lifetime: the client outlives the original 20 s
    And the client is still registered after 20s

  @int-105
  Scenario: Discarded register update
    Given the client is registered
    When the server writes "60" to /1/0/1
    Then the client sends an Update within 5s
    # NoSec lets a spoofed De-register make the server forget the client, unknown to it
    When a spoofed De-register of the client reaches the server
    And 1s passes
    Then the client is not registered
    And the server answers an Update with 4.04 within 60s
    And the client registers again within 10s

  @int-106
  Scenario: Registration over TCP
    Given the subject supports "TCP"
    When the client starts
    Then the client registers within 10s

  @int-107
  Scenario: Extending the lifetime
    Given the client is registered
    When the server writes "60" to /1/0/1
    Then the client sends an Update within 5s
    When the server writes "120" to /1/0/1
    Then the response code is 2.04
    And the client sends an Update within 5s
    And the last Update carried "lt=120"
    And the registration has lifetime 120
    And the client sends an Update within 120s
    And the client is registered

  @core-6.2.1
  Scenario: Lifetime expiry: a client that stops updating is dropped
    Given the client is registered
    When the server writes "60" to /1/0/1
    Then the client sends an Update within 5s
    Given the client's link loses 100% of datagrams
    Then the registration expires within 90s
