@information_reporting @send
Feature: Send (ETS int-306, int-307, int-311)
  The client pushes values to the server with the Send operation, POST /dp in SenML
  (Core TS 1.1 §6.4.3). The device is the ETS configuration C.3 (profile "ets-1.1").

  Background:
    Given the LwM2M server is running
    And a client "ets-dev" with profile "ets-1.1"
    And the client is registered

  @int-306
  Scenario: Send
    When the client sends /1/0, /3/0
    Then the server receives a Send within 5s
    And the sent value of /1/0/1 is "86400"
    And the sent value of /3/0/0 is "Open Mobile Alliance"
    And the Send holds only /1/0, /3/0
    And the client's Send is answered 2.04 within 5s

  @int-307
  Scenario: Muting Send
    Given the subject supports "Mute Send"
    When the server writes "true" to /1/0/23
    Then the response code is 2.04
    When the client sends /3/0/0
    Then no Send reaches the server within 10s
    When the server writes "false" to /1/0/23
    And the client sends /3/0/0
    Then the server receives a Send within 5s

  @int-311
  Scenario: Send of chosen resources
    When the client sends /1/0/1, /3/0/11/0
    Then the server receives a Send within 5s
    And the Send holds only /1/0/1, /3/0/11/0
    And the sent value of /1/0/1 is "86400"
    And the sent value of /3/0/11/0 is "0"
    And the client's Send is answered 2.04 within 5s

  @core-6.4.3
  Scenario: A LwM2M 1.0 client cannot Send
    Given a client "old-dev" with profile "ets-1.0"
    And the client is registered
    When the client sends /3/0/0
    Then no Send reaches the server within 10s
