@security
Feature: Channel security (ETS int-401, int-402)
  CoAP over DTLS 1.2 (Core TS 1.1 §7.1, RFC 6347, RFC 7925) with pre-shared keys
  (TLS_PSK_WITH_AES_128_CCM_8, Security mode 0: identity /0/0/3, key /0/0/5) or
  certificates (TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8, mode 2: the client's certificate,
  the server's trust anchor and the client's key in /0/0/3-5; the endpoint name is the
  certificate's common name). Registration and a Read must complete inside the DTLS
  session; a session acts only for the endpoint its identity belongs to (Core TS 1.1
  §7.1.8): anything else gets 4.03. Certificates come from a test CA made in the run.

  Background:
    Given the LwM2M server is running
    And the subject supports "DTLS"

  @int-401
  Scenario: UDP channel security with a pre-shared key
    Given a client "ets-psk" with profile "ets-1.1"
    And the client uses DTLS with the PSK identity "ets-psk-identity"
    When the client starts
    Then the client completes a DTLS handshake within 10s
    And the client registers within 10s
    And the client is registered over DTLS with the PSK identity "ets-psk-identity"
    When the server reads /3/0 in TLV
    Then the response code is 2.05
    And the response is in TLV
    And the value of /3/0/0 is "Open Mobile Alliance"
    And the last operation went over DTLS

  @int-401
  Scenario: A wrong pre-shared key fails the handshake, and the client does not register
    Given a client "ets-psk" with profile "ets-1.1"
    And the client uses DTLS with the PSK identity "ets-psk-identity" and a wrong key
    When the client starts
    Then the client's DTLS handshake fails within 10s with "wrong PSK key"
    And the client is not registered

  @int-401
  Scenario: A PSK identity the server does not know fails the handshake
    Given a client "ets-psk" with profile "ets-1.1"
    And the client uses DTLS with the PSK identity "nobody-knows-me" unknown to the server
    When the client starts
    Then the client's DTLS handshake fails within 10s with "unknown PSK identity"
    And the client is not registered

  @core-7.1.8
  Scenario: A session registering under another endpoint's PSK identity gets 4.03
    Given a client "ets-psk" with profile "ets-1.1"
    And the client uses DTLS with the PSK identity "ets-other-identity" of "ets-other"
    When the client starts
    Then the client completes a DTLS handshake within 10s
    And the server refuses the client's Register with 4.03 within 10s
    And the client is not registered

  @int-402
  Scenario: UDP channel security with certificates
    Given a client "ets-cert" with profile "ets-1.1"
    And the client uses DTLS with a certificate for "ets-cert"
    When the client starts
    Then the client completes a DTLS handshake within 10s
    And the client registers within 10s
    And the client is registered over DTLS with the certificate of "ets-cert"
    When the server reads /3/0 in TLV
    Then the response code is 2.05
    And the value of /3/0/0 is "Open Mobile Alliance"
    And the last operation went over DTLS

  @int-402
  Scenario: A certificate whose common name is another endpoint's gets 4.03
    Given a client "ets-cert" with profile "ets-1.1"
    And the client uses DTLS with a certificate for "someone-else"
    When the client starts
    Then the client completes a DTLS handshake within 10s
    And the server refuses the client's Register with 4.03 within 10s
    And the client is not registered

  @int-402
  Scenario: An expired client certificate fails the handshake
    Given a client "ets-cert" with profile "ets-1.1"
    And the client uses DTLS with an expired certificate for "ets-cert"
    When the client starts
    Then the client's DTLS handshake fails within 10s with "expired"
    And the client is not registered

  @int-402
  Scenario: A client certificate from a CA the server does not trust fails the handshake
    Given a client "ets-cert" with profile "ets-1.1"
    And the client uses DTLS with a certificate for "ets-cert" from an untrusted CA
    When the client starts
    Then the client's DTLS handshake fails within 10s with "certificate"
    And the client is not registered

  @int-401
  Scenario: A rebooted client forgets its session and handshakes again
    Given a client "ets-psk" with profile "ets-1.1"
    And the client uses DTLS with the PSK identity "ets-psk-identity"
    And the client is registered
    When the server executes /3/0/4
    Then the response code is 2.04
    And the client reboots within 5s
    And the client completes a DTLS handshake within 30s
    And the client registers again within 30s
    And the client is registered over DTLS with the PSK identity "ets-psk-identity"

  @core-6.2.2 @nat
  Scenario: A NAT rebinding without Connection ID costs a new handshake, not the registration
    Given a client "nat-psk" with profile "ets-1.1"
    And the client uses DTLS with the PSK identity "nat-psk"
    And the client is behind a NAT that forgets mappings after 30s
    And the client is registered
    When 60s pass
    # the mapping is gone: the Update leaves from a new port, its first record is a stray
    # for the server, and the CoAP retransmission opens a new session from there
    And the client sends an Update
    Then the client completes a DTLS handshake within 10s
    And the client sends an Update within 10s
    And the server reaches the client at its new address
    And the client is registered over DTLS with the PSK identity "nat-psk"
    When the server reads /3/0/0 in plain text
    Then the response code is 2.05
    And the last operation went over DTLS

  @core-7.1
  Scenario: A server that forgot its DTLS sessions gets the client back after a failed Update
    Given a client "lost-psk" with profile "ets-1.1"
    And the client uses DTLS with the PSK identity "lost-psk"
    And the client is registered
    When the server forgets its DTLS sessions
    And the client sends an Update
    # the server drops the records of the forgotten session as strays; the Update fails
    # when CoAP gives up, the client drops its session and its Register handshakes again
    Then the client completes a DTLS handshake within 300s
    And the client registers again within 300s
    And the client is registered over DTLS with the PSK identity "lost-psk"

  @core-7.1 @scale
  Scenario: Two hundred PSK clients register over DTLS at once
    Given 200 clients with profile "ets-1.1"
    And every client uses DTLS with its endpoint name as PSK identity
    And "ets-199" is the client
    When all clients start within 5s
    Then all clients are registered within 60s
    And the client is registered over DTLS with the PSK identity "ets-199"
    When the server reads /3/0/0 in plain text
    Then the response code is 2.05
    And the last operation went over DTLS

  @int-402
  Scenario: UDP channel security with a raw public key
    Given the subject supports "raw public keys"
    And a client "ets-rpk" with profile "ets-1.1"
    When the client starts
    Then the client registers within 10s
