@interop @quirks
Feature: Spec-version quirks of real clients (beyond the ETS)
  Deviations seen in real LwM2M clients (scenarios/quirks): the server must tolerate them,
  flag them, and never take corrupted values for good ones.

  Background:
    Given the LwM2M server is running

  @core-6.2.1
  Scenario: A client that registers without lwm2m= is taken for 1.0 and flagged
    Given a client "draft-dev" with profile "minimal-1.0" and quirks "no-lwm2m-version"
    When the client starts
    Then the client registers within 10s
    And the registration has LwM2M version 1.0
    And the registration is flagged "no lwm2m= parameter"

  @core-6.2.1 @core-6.5
  Scenario: A 1.1 client with the 1.0 queue binding b=UQ is queue mode and flagged
    Given a client "uq-dev" with profile "sensor-1.1" and quirks "upgraded-1.0-stack"
    When the client starts
    Then the client registers within 10s
    And the registration is in queue mode
    And the registration has binding "U"
    And the registration is flagged "b=UQ"

  @core-6.4.3
  Scenario: Pre-1.0 content-format numbers 1542 are understood and flagged
    Given a client "draft-dev" with profile "minimal-1.0" and quirks "pre-1.0-draft"
    And the client is registered
    When the server reads /1/0
    Then the response code is 2.05
    And the response is in TLV 1542
    And the response is flagged "LegacyContentFormat"
    And the value of /1/0/1 is "3600"

  @core-6.4.3
  Scenario: Pre-1.0 Location strings are flagged, not passed on as numbers
    Given a client "wakaama" with profile "wakaama-like"
    And the client is registered
    When the server reads /6/0 in TLV
    Then the response code is 2.05
    And the response is flagged "TypeMismatch"

  @core-6.4.3
  Scenario: Over-long TLV integers are decoded and flagged
    Given a client "sloppy" with profile "ets-1.1" and quirks "non-minimal-tlv-integers"
    And the client is registered
    When the server reads /1/0 in TLV
    Then the response code is 2.05
    And the value of /1/0/1 is "86400"
    And the response is flagged "NonMinimal"

  @rfc7252-4.5
  Scenario: Late and duplicated responses are deduplicated
    Given a client "slow" with profile "ets-1.1" and quirks "slow-responder"
    And the client is registered
    When the server reads /3/0/0 in plain text
    Then the response code is 2.05
    And the value of /3/0/0 is "Open Mobile Alliance"
    When the server reads /3/0/1 in plain text
    Then the response code is 2.05

  @rfc7252-4.2
  Scenario: Retransmission carries an exchange through a lossy link
    Given a client "lossy" with profile "ets-1.1"
    And the client is on the "lossy" network
    And the client is registered
    When the server reads /3/0 in TLV
    Then the response code is 2.05
    When the server reads /1/0 in SenML CBOR
    Then the response code is 2.05
