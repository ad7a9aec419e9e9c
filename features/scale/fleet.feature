@scale
Feature: Fleets in one process (beyond the ETS)
  Hundreds of simulated clients register with the server in one process on the virtual
  clock; latencies are those of the simulated link (5 ms each way) and the machines.

  Background:
    Given the LwM2M server is running

  @core-6.2.1
  Scenario: 500 clients register within a ramp-up of 10 s
    Given 500 clients with profile "minimal-1.0"
    When all clients start within 10s
    Then all clients are registered within 60s
    And the 99th percentile of the "register" latency is below 1s

  @core-5.2.7.1
  Scenario: 200 clients bootstrap through a fallback configuration
    Given the bootstrap server is running
    And the bootstrap server provisions every client matching "sensor-*"
    And 200 clients with profile "sensor-1.1" that only know the bootstrap server
    When all clients start within 10s
    Then all clients are registered within 120s
