@device_management
Feature: Write, Execute, Create and Delete (ETS int-205 to int-290)
  Writes in every format the client speaks, partial update (POST) and replace (PUT), writes
  that must fail, Execute, Create and Delete (Core TS 1.1 §6.3.3 to §6.3.7). The device is
  the ETS configuration C.6 with the C.12 Portfolio instance (profile "ets-1.1").

  Background:
    Given the LwM2M server is running
    And a client "ets-dev" with profile "ets-1.1"
    And the client is registered

  @int-205
  Scenario: Write in plain text
    When the server writes "101" to /1/0/2 in plain text
    Then the response code is 2.04
    When the server writes "1010" to /1/0/3 in plain text
    Then the response code is 2.04
    When the server writes "2000" to /1/0/5 in plain text
    Then the response code is 2.04
    When the server reads /1/0 in TLV
    Then the value of /1/0/2 is "101"
    And the value of /1/0/3 is "1010"
    And the value of /1/0/5 is "2000"
    # C.3 restored
    When the server writes "1" to /1/0/2 in plain text
    And the server writes "10" to /1/0/3 in plain text
    And the server writes "86400" to /1/0/5 in plain text
    And the server reads /1/0 in TLV
    Then the value of /1/0/2 is "1"
    And the value of /1/0/3 is "10"
    And the value of /1/0/5 is "86400"

  @int-212
  Scenario: Write in CBOR
    When the server writes "101" to /1/0/2 in CBOR
    Then the response code is 2.04
    When the server writes "1010" to /1/0/3 in CBOR
    Then the response code is 2.04
    When the server writes "true" to /1/0/6 in CBOR
    Then the response code is 2.04
    When the server reads /1/0 in SenML CBOR
    Then the value of /1/0/2 is "101"
    And the value of /1/0/3 is "1010"
    And the value of /1/0/6 is "true"

  @int-215
  Scenario: Write in TLV: partial update, then replace with the saved values
    When the server updates /1/0 in TLV with:
      | path   | value |
      | /1/0/2 | 101   |
      | /1/0/3 | 1010  |
      | /1/0/5 | 2000  |
      | /1/0/6 | true  |
      | /1/0/7 | U     |
    Then the response code is 2.04
    When the server reads /1/0 in TLV
    Then the response code is 2.05
    And the value of /1/0/2 is "101"
    And the value of /1/0/3 is "1010"
    And the value of /1/0/5 is "2000"
    And the value of /1/0/6 is "true"
    When the server replaces /1/0 in TLV with:
      | path   | value |
      | /1/0/1 | 86400 |
      | /1/0/2 | 1     |
      | /1/0/3 | 10    |
      | /1/0/5 | 86400 |
      | /1/0/6 | false |
      | /1/0/7 | U     |
    Then the response code is 2.04
    When the server reads /1/0 in TLV
    Then the value of /1/0/2 is "1"
    And the value of /1/0/3 is "10"
    And the value of /1/0/5 is "86400"
    And the value of /1/0/6 is "false"

  @int-226
  Scenario: Partial update on an instance
    When the server updates /1/0 in TLV with:
      | path   | value |
      | /1/0/1 | 61    |
      | /1/0/6 | true  |
    Then the response code is 2.04
    And the client sends an Update within 5s
    And the last Update carried "lt=61"
    When the server reads /1/0
    Then the value of /1/0/1 is "61"
    And the value of /1/0/6 is "true"

  @int-227
  Scenario: Replace on a resource
    When the server writes "63" to /1/0/1
    Then the response code is 2.04
    And the client sends an Update within 5s
    And the registration has lifetime 63
    When the server reads /1/0/1
    Then the response code is 2.05
    And the value of /1/0/1 is "63"

  @int-228
  Scenario: Write on a resource instance
    When the server writes "test" to /16/0/0/1
    Then the response code is 2.04
    When the server reads /16/0/0/1
    Then the response code is 2.05
    And the response holds only /16/0/0/1
    And the value of /16/0/0/1 is "test"

  @int-230
  Scenario: Write-Composite on the Server and Portfolio objects
    When the server writes the composite in SenML CBOR:
      | path     | value |
      | /1/0/1   | 61    |
      | /1/0/6   | true  |
      | /16/0/0/0 | aa   |
      | /16/0/0/1 | bb   |
      | /16/0/0/2 | cc   |
      | /16/0/0/3 | dd   |
    Then the response code is 2.04
    And the client sends an Update within 5s
    When the server reads /1/0
    Then the value of /1/0/1 is "61"
    And the value of /1/0/6 is "true"
    When the server reads /16
    Then the value of /16/0/0/0 is "aa"
    And the value of /16/0/0/3 is "dd"

  @int-233
  Scenario: Write in SenML CBOR
    When the server updates /1/0 in SenML CBOR with:
      | path   | value |
      | /1/0/1 | 61    |
      | /1/0/6 | true  |
    Then the response code is 2.04
    And the client sends an Update within 5s
    When the server reads /1 in SenML CBOR
    Then the value of /1/0/1 is "61"
    When the server writes "test_value" to /16/0/0/0 in SenML CBOR
    Then the response code is 2.04
    When the server reads /16 in SenML CBOR
    Then the value of /16/0/0/0 is "test_value"
    When the server writes "63" to /1/0/1 in SenML CBOR
    Then the response code is 2.04
    And the client sends an Update within 5s
    When the server reads /1/0/1 in SenML CBOR
    Then the value of /1/0/1 is "63"

  @int-234
  Scenario: Write in SenML JSON
    When the server updates /1/0 in SenML JSON with:
      | path   | value |
      | /1/0/1 | 61    |
      | /1/0/6 | true  |
    Then the response code is 2.04
    And the client sends an Update within 5s
    When the server reads /1 in SenML JSON
    Then the value of /1/0/1 is "61"
    When the server writes "test_value" to /16/0/0/0 in SenML JSON
    Then the response code is 2.04
    When the server reads /16 in SenML JSON
    Then the value of /16/0/0/0 is "test_value"
    When the server writes "63" to /1/0/1 in SenML JSON
    Then the response code is 2.04
    And the client sends an Update within 5s
    When the server reads /1/0/1 in SenML JSON
    Then the value of /1/0/1 is "63"

  @int-241
  Scenario: Execute Reboot
    When the server executes /3/0/4
    Then the response code is 2.04
    And the client reboots within 1s
    And the client registers again within 30s

  @int-256
  Scenario: Writing a read-only resource fails
    When the server writes "123" to /1/0/0 in plain text
    Then the response code is 4.05
    When the server reads /1/0/0 in plain text
    Then the value of /1/0/0 is "1"

  @int-257
  Scenario: Write-Composite on the Server and Device objects
    When the server reads /1
    Then the response code is 2.05
    When the server reads /3
    Then the response code is 2.05
    When the server writes the composite in SenML JSON:
      | path   | value |
      | /1/0/2 | 101   |
      | /1/0/6 | true  |
      | /3/0/13 | 0    |
    Then the response code is 2.04
    When the server reads /1/0
    Then the value of /1/0/2 is "101"
    And the value of /1/0/6 is "true"

  @int-270 @int-1630
  Scenario: Create a Portfolio instance
    When the server discovers /16
    Then the response lists "</16/0/0>;dim=4"
    When the server creates an instance of /16 in TLV with:
      | path      | value                |
      | /16/1/0/0 | Host Device ID #2    |
      | /16/1/0/1 | Host Device Model #2 |
    Then the response code is 2.01
    And the client sends an Update within 5s
    When the server discovers /16
    Then the response lists "</16/0/0>;dim=4, </16/1/0>;dim=2"
    When the server reads /16
    Then the response holds /16/0, /16/1
    And the value of /16/1/0/0 is "Host Device ID #2"

  @int-271
  Scenario: Create a resource instance of a multiple resource
    When the server writes "Host Device Firmware #1" to /16/0/0/4
    Then the response code is 2.04
    When the server discovers /16/0/0
    Then the response lists "</16/0/0>;dim=5"
    When the server reads /16/0/0/4
    Then the value of /16/0/0/4 is "Host Device Firmware #1"

  @int-290 @int-1635
  Scenario: Delete a Portfolio instance
    When the server deletes /16/0
    Then the response code is 2.02
    When the server discovers /16
    Then the response lists exactly "</16>"
