"""The privacy function: carries out the pending deletions on a schedule (`app.handler`),
finding the objects that hold the subjects' events with Athena."""
