@information_reporting
Feature: Observe and notify (ETS int-301 to int-305, int-308 to int-310)
  Observations and their notification attributes (pmin, pmax, gt, lt, st, inherited from
  the object and instance levels), cancellation by Reset and by Observe=1, and
  Observe-Composite (Core TS 1.1 §6.4, RFC 7641). The device is the ETS configuration C.4
  (profile "ets-1.1": default periods pmin 1 s, pmax 10 s in its Server object).

  Background:
    Given the LwM2M server is running
    And a client "ets-dev" with profile "ets-1.1"
    And the client is registered

  @int-301
  Scenario: Observe and notify
    When the server reads /3/0/6
    Then the response code is 2.05
    When the server writes attributes "pmin=5&pmax=15" to /3/0/7
    Then the response code is 2.04
    When the server writes attributes "pmin=10&pmax=20" to /3/0/8
    Then the response code is 2.04
    When the server observes /3/0/7
    Then the response code is 2.05
    And a notification arrives between 14s and 16s later
    When the server observes /3/0/8
    Then the response code is 2.05
    And a notification arrives between 19s and 21s later
    And at least 3 notifications of /3/0/7 arrive within 50s
    # a change inside pmin is reported at pmin, not before
    When the value of /3/0/7/0 changes to "3900"
    Then a notification of /3/0/7 arrives within 6s
    And the notification's value of /3/0/7/0 is "3900"

  @int-302
  Scenario: Cancel an observation with a Reset
    When the server writes attributes "pmin=5&pmax=15" to /3/0/7
    And the server writes attributes "pmin=10&pmax=20" to /3/0/8
    And the server observes /3/0/7
    And the server observes /3/0/8
    Then a notification of /3/0/7 arrives within 16s
    When the server cancels the observation of /3/0/7 with a Reset
    Then no notification of /3/0/7 arrives within 40s
    And the client serves 1 observation
    And the server holds no observation of /3/0/7
    When the server cancels the observation of /3/0/8 with a Reset
    Then no notification of /3/0/8 arrives within 40s
    And the client serves 0 observations

  @int-303
  Scenario: Cancel an observation with Observe=1
    When the server writes attributes "pmin=5&pmax=15" to /3/0/7
    And the server writes attributes "pmin=10&pmax=20" to /3/0/8
    And the server observes /3/0/7
    And the server observes /3/0/8
    Then a notification of /3/0/7 arrives within 16s
    When the server cancels the observation of /3/0/7 with Observe=1
    Then the response code is 2.05
    When the server cancels the observation of /3/0/8 with Observe=1
    Then the response code is 2.05
    And the client serves 0 observations
    And no notification of /3/0/8 arrives within 40s

  @int-304
  Scenario: Observe-Composite
    # no default pmin/pmax (the ETS pre-condition; Z sets /1/0/2 = /1/0/3 = 0)
    When the server writes "0" to /1/0/2
    And the server writes "0" to /1/0/3
    And the server writes attributes "pmin=30&pmax=45" to /1/0/1
    Then the response code is 2.04
    When the server observes the composite /1/0/1, /3/0/11/0, /3/0/16 in SenML JSON
    Then the response code is 2.05
    And the response holds only /1/0/1, /3/0/11/0, /3/0/16
    And a notification arrives between 30s and 45s later
    And the notification holds /1/0/1, /3/0/11/0, /3/0/16

  @int-305
  Scenario: Cancel an Observe-Composite
    When the server observes the composite /1/0/1, /3/0/11/0, /3/0/16 in SenML CBOR
    Then the response code is 2.05
    And the client serves 1 observation
    When the server cancels the composite observation with Observe=1
    Then the response code is 2.05
    And the client serves 0 observations
    When the value of /3/0/11/0 changes to "1"
    Then no notification arrives within 60s

  @int-308
  Scenario: Observe-Composite sees a created instance
    When the server writes attributes "pmin=30&pmax=45" to /16/0
    Then the response code is 2.04
    When the server observes the composite /16/0, /16/1 in SenML JSON
    Then the response code is 2.05
    And the response holds only /16/0
    When the server creates an instance of /16 in TLV with:
      | path      | value |
      | /16/1/0/0 | 11    |
      | /16/1/0/1 | 22    |
      | /16/1/0/2 | 33    |
      | /16/1/0/3 | 44    |
    Then the response code is 2.01
    And a notification arrives within 46s
    And the notification holds /16/0, /16/1

  @int-309
  Scenario: Observe-Composite sees a deleted instance
    When the server creates an instance of /16 in TLV with:
      | path      | value |
      | /16/1/0/0 | 11    |
      | /16/1/0/1 | 22    |
    Then the response code is 2.01
    When the server writes attributes "pmin=30&pmax=45" to /16/0
    And the server observes the composite /16/0, /16/1 in SenML JSON
    Then the response holds /16/0, /16/1
    When the server deletes /16/1
    Then the response code is 2.02
    And a notification arrives within 46s
    And the notification holds /16/0
    And the notification does not hold /16/1

  @int-310
  Scenario: Observe-Composite follows a changed attribute
    When the server observes the composite /1/0/1, /3/0 in SenML CBOR
    Then the response code is 2.05
    When the server writes attributes "pmax=5" to /3
    Then the response code is 2.04
    And a notification arrives within 6s
    And a notification arrives between 4s and 6s later
    And a notification arrives between 4s and 6s later
