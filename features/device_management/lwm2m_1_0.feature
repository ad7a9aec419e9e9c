@device_management @lwm2m-1.0
Feature: OMA JSON and LwM2M 1.0 devices (ETS int-204, int-220)
  LwM2M 1.0 devices read and write OMA JSON (11543), which 1.1 dropped in favour of SenML;
  composite operations do not exist in 1.0 (Core TS 1.0 §6.4.4). The device is the ETS
  configuration in its 1.0 form (profile "ets-1.0").

  Background:
    Given the LwM2M server is running
    And a client "ets-10" with profile "ets-1.0"
    And the client is registered

  @int-204
  Scenario: Read in JSON
    When the server reads /3/0 in JSON
    Then the response code is 2.05
    And the response is in JSON
    And the response holds /3/0/0, /3/0/1, /3/0/2, /3/0/3, /3/0/11, /3/0/16
    And the value of /3/0/16 is configured as "U"

  @int-220
  Scenario: Write in JSON
    When the server updates /1/0 in JSON with:
      | path   | value |
      | /1/0/2 | 101   |
      | /1/0/3 | 1010  |
      | /1/0/5 | 2000  |
      | /1/0/6 | true  |
    Then the response code is 2.04
    When the server reads /1/0 in JSON
    Then the value of /1/0/2 is "101"
    And the value of /1/0/3 is "1010"
    And the value of /1/0/5 is "2000"
    And the value of /1/0/6 is "true"

  @core-6.3.8 @until-lwm2m-1.0
  Scenario: Composite operations are refused for a 1.0 client
    When the server reads the composite /1/0/1, /3/0/0 in SenML JSON
    Then the operation fails with "composite operations are LwM2M 1.1+"

  @core-6.4.3 @until-lwm2m-1.0
  Scenario: Read an instance in TLV from a 1.0 device
    When the server reads /3/0
    Then the response code is 2.05
    And the response is in TLV
    And the value of /3/0/0 is configured as "Open Mobile Alliance"
