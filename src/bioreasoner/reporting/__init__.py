"""Reporting: intervals and paired tests over the eval rows (`stats`, `lineage`) and offline
figures of the lineage and the training curves (`plots`), for the `report` stage."""
