"""The one anonymization pipeline that the CLI, the API and the web page all call."""
