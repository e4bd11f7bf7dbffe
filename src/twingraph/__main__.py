from twingraph.cli.main import main

main()
