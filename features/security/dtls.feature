@security
Feature: Channel security (ETS int-401, int-402)
  CoAP over DTLS 1.2 with pre-shared keys or certificates (Core TS 1.1 §7.1, RFC 6347,
  RFC 7925). Registration and a Read must complete inside the DTLS session.

  Background:
    Given the LwM2M server is running
    And a client "ets-psk" with profile "ets-1.1"

  @int-401
  Scenario: UDP channel security with a pre-shared key
    Given the subject supports "DTLS"
    When the client starts
    Then the client registers within 10s
    When the server reads /3/0 in TLV
    Then the response code is 2.05

  @int-402
  Scenario: UDP channel security with certificates
    Given the subject supports "DTLS"
    When the client starts
    Then the client registers within 10s
    When the server reads /3/0 in TLV
    Then the response code is 2.05
