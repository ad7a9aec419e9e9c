@registration
Feature: Registration interface (ETS int-101 to int-109)
  The client registers with the LwM2M Server, keeps its registration alive with Updates,
  and de-registers (Core TS 1.1 §6.2). Configuration C.1/C.3 with the ETS device profile.

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
    And the registration lists /1/0, /3/0
    And the registration does not list /0
    And the client knows it is registered within 1s
