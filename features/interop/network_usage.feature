@interop @network-usage
Feature: Network usage of reading a whole device (beyond the ETS)
  LwM2M 1.0 has no device-level Read: reading everything takes one request per object. The
  thesis this project grew out of measured 8 round trips and 1775 bytes for Wakaama's demo
  client over DTLS; here the same reads over CoAP without DTLS, recorded per exchange into
  the report's network-usage table.

  @core-6.3.1
  Scenario: Reading a Wakaama-like device object by object
    Given the LwM2M server is running
    And a client "wakaama" with profile "wakaama-like"
    And the client is registered
    When the server reads /1 in TLV
    Then the response code is 2.05
    And the last operation took at most 200 bytes
    When the server reads /2 in TLV
    Then the response code is 2.05
    When the server reads /3 in TLV
    Then the response code is 2.05
    And the last operation took at most 400 bytes
    When the server reads /4 in TLV
    Then the response code is 2.05
    When the server reads /5 in TLV
    Then the response code is 2.05
    When the server reads /6 in TLV
    Then the response code is 2.05
    When the server reads /7 in TLV
    Then the response code is 2.05
    When the server reads /1024 in TLV
    Then the response code is 2.05
    And the response holds /1024/10, /1024/11, /1024/12
