@registration @queue-mode
Feature: Queue mode (ETS int-108, int-109; Core TS 1.1 §6.5)
  A queue-mode client sleeps after MAX_TRANSMIT_WAIT (93 s) without traffic; the server holds
  requests for it until it is heard from again. The device is the "sensor-1.1" profile
  (LwM2M 1.1, b=U with the Q parameter, lifetime 600 s).

  Background:
    Given the LwM2M server is running
    And a client "nb-dev" with profile "sensor-1.1"

  @int-108
  Scenario: Turning on queue mode
    When the client starts
    Then the client registers within 10s
    And the registration is in queue mode
    And the registration has binding "U"
    And the registration has no findings

  @int-109
  Scenario: Behaviour in queue mode: requests wait for the next Update
    Given the client is registered
    When the server writes "240" to /1/0/1
    Then the client sends an Update within 5s
    When 120s pass
    Then the client is asleep
    And the server considers the client asleep
    When the server reads /1/0/1 in plain text
    Then the server holds 1 request for the client
    # the client's own Update, before its 240 s lifetime runs out, wakes it
    And the held request is answered within 150s
    And the response code is 2.05
    And the value of /1/0/1 is "240"
    And the server holds 0 requests for the client

  @core-6.5 @nat
  Scenario: Queue mode behind a NAT that forgets mappings sooner than the awake window
    Given the client is behind a NAT that forgets mappings after 30s
    And the client is registered
    When 200s pass
    Then the client is asleep
    When the server reads /3/0/0 in plain text
    Then the server holds 1 request for the client
    When the client wakes up
    Then the held request is answered within 10s
    And the response code is 2.05
    And the server reaches the client at its new address
