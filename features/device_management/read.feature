@device_management
Feature: Read and Discover (ETS int-201 to int-237, int-260, int-261, int-280, int-281)
  Device Management reads in every format the client speaks (Core TS 1.1 §6.3.1, §7.4) and
  Discover with notification attributes (§6.3.2, §5.1.2). The device is the ETS
  configuration C.6 with the C.12 Portfolio instance (profile "ets-1.1").

  Background:
    Given the LwM2M server is running
    And a client "ets-dev" with profile "ets-1.1"
    And the client is registered

  @int-201
  Scenario: Read in plain text
    When the server reads /3/0/0 in plain text
    Then the response code is 2.05
    And the response is in plain text
    And the value of /3/0/0 is configured as "Open Mobile Alliance"
    When the server reads /3/0/1 in plain text
    Then the response code is 2.05
    And the value of /3/0/1 is configured as "Lightweight M2M Client"
    When the server reads /3/0/2 in plain text
    Then the response code is 2.05
    And the value of /3/0/2 is configured as "345000123"

  @int-203
  Scenario: Read an instance in TLV
    When the server reads /3/0 in TLV
    Then the response code is 2.05
    And the response is in TLV
    And the response holds /3/0/0, /3/0/1, /3/0/2, /3/0/3, /3/0/11, /3/0/16
    And the value of /3/0/16 is configured as "U"
    And the value of /3/0/11/0 is configured as "0"
    And the response has no findings

  @int-211
  Scenario: Read in CBOR
    When the server reads /1/0/0 in CBOR
    Then the response code is 2.05
    And the response is in CBOR
    And the value of /1/0/0 is configured as "1"
    When the server reads /1/0/6 in CBOR
    Then the value of /1/0/6 is configured as "false"
    When the server reads /1/0/7 in CBOR
    Then the value of /1/0/7 is configured as "U"

  @int-221
  Scenario: Operations on the Security object are refused
    When the server reads /0 in TLV
    Then the response code is 4.01
    When the server writes "coap://example.com:5683" to /0/0/0 in plain text
    Then the response code is 4.01
    When the server writes attributes "pmin=30&pmax=45" to /0
    Then the response code is 4.01

  @int-222
  Scenario: Read on an object
    When the server reads /1
    Then the response code is 2.05
    And the response holds /1/0/0, /1/0/1, /1/0/6, /1/0/7
    When the server reads /3
    Then the response code is 2.05
    And the response holds only /3/0

  @int-223
  Scenario: Read on an object instance
    When the server reads /1/0
    Then the response code is 2.05
    And the response holds only /1/0
    And the value of /1/0/1 is configured as "86400"
    When the server reads /3/0
    Then the response code is 2.05
    And the response holds /3/0/0, /3/0/11/0, /3/0/16

  @int-224
  Scenario: Read on a resource
    When the server reads /1/0/0
    Then the value of /1/0/0 is configured as "1"
    When the server reads /1/0/1
    Then the value of /1/0/1 is configured as "86400"
    When the server reads /1/0/6
    Then the value of /1/0/6 is configured as "false"
    When the server reads /1/0/7
    Then the value of /1/0/7 is configured as "U"
    When the server reads /3/0/16
    Then the value of /3/0/16 is configured as "U"

  @int-225
  Scenario: Read on a resource instance
    When the server reads /3/0/11/0
    Then the response code is 2.05
    And the response holds only /3/0/11/0
    And the value of /3/0/11/0 is configured as "0"

  @int-229
  Scenario: Read-Composite in SenML JSON and SenML CBOR
    When the server reads the composite /3, /1/0 in SenML JSON
    Then the response code is 2.05
    And the response is in SenML JSON
    And the response holds /3/0/0, /1/0/1
    When the server reads the composite /1/0/1, /3/0/11/0 in SenML CBOR
    Then the response code is 2.05
    And the response is in SenML CBOR
    And the response holds only /1/0/1, /3/0/11/0

  @int-231
  Scenario: Read in SenML JSON at every level
    When the server reads /1 in SenML JSON
    Then the response code is 2.05
    And the response is in SenML JSON
    And the response holds /1/0/1
    When the server reads /3/0 in SenML JSON
    Then the response holds /3/0/0, /3/0/16
    When the server reads /3/0/16 in SenML JSON
    Then the value of /3/0/16 is configured as "U"
    When the server reads /3/0/11/0 in SenML JSON
    Then the value of /3/0/11/0 is configured as "0"

  @int-232
  Scenario: Read in SenML CBOR at every level
    When the server reads /1 in SenML CBOR
    Then the response code is 2.05
    And the response is in SenML CBOR
    And the response holds /1/0/1
    When the server reads /3/0 in SenML CBOR
    Then the response holds /3/0/0, /3/0/16
    When the server reads /3/0/16 in SenML CBOR
    Then the value of /3/0/16 is configured as "U"
    When the server reads /3/0/11/0 in SenML CBOR
    Then the value of /3/0/11/0 is configured as "0"

  @int-235
  Scenario: Read-Composite on the root leaves out the Security object
    When the server reads the composite / in SenML CBOR
    Then the response code is 2.05
    And the response holds /1/0, /3/0
    And the response does not hold /0

  @int-236
  Scenario: Read-Composite with absent paths
    When the server reads the composite /1/0, /1/0/1, /3/0/11/0, /3339/0/5522, /3353/0/6030 in SenML JSON
    Then the response code is 2.05
    And the response holds only /1/0, /3/0/11/0

  @int-237
  Scenario: Read on an object without Accept
    Given the subject supports "Read without Accept"
    When the server reads /1
    Then the response code is 2.05

  @int-260
  Scenario: Discover with notification attributes (ETS 1.0.1 procedure)
    When the server discovers /3
    Then the response code is 2.05
    And the response lists "</3/0/0>, </3/0/6>;dim=2, </3/0/7>;dim=2, </3/0/8>;dim=2, </3/0/11>;dim=1, </3/0/16>"
    When the server writes attributes "pmin=10&pmax=200" to /3/0
    Then the response code is 2.04
    When the server discovers /3
    Then the response lists "</3/0>;pmin=10;pmax=200"
    When the server writes attributes "lt=1&gt=6&st=1" to /3/0/7
    Then the response code is 2.04
    When the server discovers /3
    Then the response lists "</3/0>;pmin=10;pmax=200, </3/0/7>;dim=2;lt=1;gt=6;st=1"
    When the server discovers /3/0/7
    Then the response lists "</3/0/7>;pmin=10;pmax=200;dim=2;lt=1;gt=6;st=1"

  @int-261
  Scenario: Write-Attributes on a multiple resource and its instance
    When the server discovers /3/0/11
    Then the response lists exactly "</3/0/11>;dim=1, </3/0/11/0>"
    When the server writes attributes "pmin=10&pmax=200" to /3
    Then the response code is 2.04
    When the server writes attributes "pmax=320" to /3/0
    Then the response code is 2.04
    When the server writes attributes "pmax=100&epmin=1&epmax=20" to /3/0/11/0
    Then the response code is 2.04
    When the server discovers /3/0/11
    Then the response lists exactly "</3/0/11>;dim=1;pmin=10;pmax=320, </3/0/11/0>;pmax=100;epmin=1;epmax=20"

  @int-280
  Scenario: Successful Read-Composite
    When the server reads the composite /3/0/16, /3/0/11/0, /1/0 in SenML CBOR
    Then the response code is 2.05
    And the value of /3/0/11/0 is configured as "0"
    And the value of /3/0/16 is configured as "U"
    And the value of /1/0/0 is configured as "1"
    And the value of /1/0/1 is configured as "86400"
    And the value of /1/0/6 is configured as "false"
    And the value of /1/0/7 is configured as "U"
    And the response holds only /3/0/16, /3/0/11/0, /1/0

  @int-281
  Scenario: Partially successful Read-Composite
    When the server reads the composite /1/0/1, /1/0/7, /1/0/8 in SenML JSON
    Then the response code is 2.05
    And the response holds only /1/0/1, /1/0/7
    And the value of /1/0/1 is configured as "86400"
    And the value of /1/0/7 is configured as "U"
