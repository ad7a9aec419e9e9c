@bootstrap
Feature: Bootstrap interface (ETS int-0 to int-9)
  The Bootstrap Server provisions a client's Security (0), Server (1) and Access Control (2)
  objects (Core TS 1.1 §5.2, §6.1). The device starts from configuration C.13: only a
  Bootstrap-Server account (Security instance 1, NoSec).

  Background:
    Given the LwM2M server is running
    And the bootstrap server is running
    And a client "ets-bs" with profile "ets-1.1" that only knows the bootstrap server

  @int-0
  Scenario: Client initiated bootstrap
    Given the bootstrap server provisions the client with an account on the LwM2M server
    # our Bootstrap Server discovers before it writes (the ETS discovers after the writes),
    # so the written account is checked in the client's tree instead
    And the bootstrap configuration starts with a Bootstrap-Discover
    When the client starts
    Then the client requests a bootstrap within 5s
    And the bootstrap session finishes within 30s
    And every bootstrap "discover" was answered 2.05
    And the bootstrap discover lists "</>;lwm2m=1.1, </0/1>, </3/0>"
    And every bootstrap "write" was answered 2.04
    And every bootstrap "finish" was answered 2.04
    And the client holds the instance /0/0
    And the client holds the instance /1/0
    And the client's value of /0/0/10 is "1"
    And the client's value of /1/0/0 is "1"
    And the client registers within 10s
    And the registration has lifetime 86400

  @int-1
  Scenario: Client initiated bootstrap over DTLS, a PSK account, then registration over DTLS
    Given the subject supports "DTLS"
    And the client's bootstrap account uses DTLS with a PSK
    And the bootstrap server provisions a PSK account on the LwM2M server
    When the client starts
    Then the client completes a DTLS handshake with the bootstrap server within 5s
    And the client requests a bootstrap within 5s
    And the bootstrap session finishes within 30s
    And every bootstrap "write" was answered 2.04
    And every bootstrap "finish" was answered 2.04
    And the client's value of /0/0/0 is the LwM2M server's DTLS URI
    And the client's value of /0/0/2 is "0"
    And the client completes a DTLS handshake within 10s
    And the client registers within 10s
    And the client is registered over DTLS with the PSK identity "ets-bs"
    When the server reads /3/0 in TLV
    Then the response code is 2.05
    And the last operation went over DTLS

  @int-2
  Scenario: Client initiated bootstrap over DTLS, a certificate account, then registration over DTLS
    Given the subject supports "DTLS"
    And the client's bootstrap account uses DTLS with a PSK
    And the bootstrap server provisions a certificate account on the LwM2M server
    When the client starts
    Then the client completes a DTLS handshake with the bootstrap server within 5s
    And the client requests a bootstrap within 5s
    And the bootstrap session finishes within 30s
    And every bootstrap "write" was answered 2.04
    And the client's value of /0/0/0 is the LwM2M server's DTLS URI
    And the client's value of /0/0/2 is "2"
    And the client completes a DTLS handshake within 10s
    And the client registers within 10s
    And the client is registered over DTLS with the certificate of "ets-bs"
    When the server reads /3/0 in TLV
    Then the response code is 2.05
    And the last operation went over DTLS

  @core-7.1.8
  Scenario: A Bootstrap-Request under another endpoint's PSK identity gets 4.03
    Given the subject supports "DTLS"
    And the client's bootstrap account uses the PSK identity "ets-other" of "ets-other"
    And the bootstrap server provisions a PSK account on the LwM2M server
    When the client starts
    Then the client completes a DTLS handshake with the bootstrap server within 5s
    And the bootstrap server refuses the Bootstrap-Request with 4.03 within 5s
    And the client is not registered

  @int-3
  Scenario: Bootstrap from a smartcard
    Given the subject supports "smartcard bootstrap"
    When the client starts
    Then the client registers within 10s

  @int-4
  Scenario: Bootstrap delete keeps the bootstrap account
    Given the bootstrap server provisions the client with an account on the LwM2M server
    And the bootstrap configuration deletes /0, /1
    When the client starts
    Then the bootstrap session finishes within 30s
    And every bootstrap "delete" was answered 2.02
    And the client still holds its bootstrap account
    And the client registers within 10s

  @int-5
  Scenario: Server initiated bootstrap through the Bootstrap-Request Trigger
    Given the subject supports "Bootstrap-Request Trigger"
    And a client "ets-both" with profile "ets-1.1" that also knows the bootstrap server
    And the bootstrap server provisions the client with an account on the LwM2M server
    And the client is registered
    When the server executes /1/0/9
    Then the response code is 2.04
    And the client requests a bootstrap within 10s
    And the bootstrap session finishes within 30s
    And the client registers again within 10s

  @core-5.2
  Scenario: Server initiated bootstrap: the bootstrap server writes unasked
    Given the subject supports "server initiated bootstrap"
    And a client "ets-both" with profile "ets-1.1" that also knows the bootstrap server
    And the bootstrap server provisions the client with an account on the LwM2M server
    And the client is registered
    When the bootstrap server starts a bootstrap of the client
    Then the bootstrap session finishes within 30s
    And every bootstrap "write" was answered 2.04
    And the client registers again within 10s

  @int-6
  Scenario: Bootstrap sequence: a client with a server account registers without bootstrap
    Given a client "ets-both" with profile "ets-1.1" that also knows the bootstrap server
    And the bootstrap server provisions the client with an account on the LwM2M server
    When the client starts
    Then the client registers within 10s
    And the client does not request a bootstrap within 30s

  @int-6
  Scenario: Bootstrap sequence: a client without a server account bootstraps
    Given the bootstrap server provisions the client with an account on the LwM2M server
    When the client starts
    Then the client requests a bootstrap within 5s
    And the bootstrap session finishes within 30s
    And the client registers within 10s

  @int-8
  Scenario: Bootstrap read
    Given the bootstrap server provisions the client with an account on the LwM2M server
    And the bootstrap configuration writes an access control instance for the device
    And the bootstrap configuration reads /1, /2
    When the client starts
    Then the bootstrap session finishes within 30s
    And every bootstrap "write" was answered 2.04
    And the bootstrap read of /1 was answered 2.05
    And the bootstrap read of /2 was answered 2.05

  @int-9
  Scenario: Bootstrap and configuration consistency
    Given the bootstrap server provisions the client with only a server lifetime
    When the client starts
    Then the client requests a bootstrap within 5s
    And the bootstrap session fails at "finish" with 4.06 within 30s
    And every bootstrap "write" was answered 2.04

  @core-5.2.7.1
  Scenario: Fallback configuration for endpoints not known in advance
    Given the bootstrap server provisions every client matching "ets-*"
    When the client starts
    Then the client requests a bootstrap within 5s
    And the bootstrap session finishes within 30s
    And the client registers within 10s
